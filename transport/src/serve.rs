//! Serving accepted connections under bounds, whatever the stream: the
//! connection slots (with eviction of the longest-idle connection when all
//! are taken) and reading one connection's frames into the received queue.
//!
//! # Fair service when every slot is taken
//!
//! A listener serves at most `max_connections` connections at once. Before
//! eviction, peers that kept their connections open and completed a frame
//! now and then (slow, but never idle long enough to time out) could hold
//! every slot, and a fresh sender waited in the backlog until they stopped.
//! Now, when every slot is taken, the connection that has gone longest
//! without completing a frame is evicted to admit the newcomer, provided it
//! has gone at least `evict_after` without one: a connection that is
//! being read right now (a burst of connect-per-event senders whose frames
//! are on their way) is never evicted, so eviction costs no event that a
//! sender considers sent, only an unfinished frame of a peer that has been
//! slow for a while. An evicted connection's complete frames already
//! buffered are still yielded; then it is closed.
//!
//! Evicted connections take a moment to wind down (their last frames may
//! wait for room in the queue), so the file descriptors in use are bounded
//! by twice `max_connections`, never more: past that, accepting waits.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use pod_protocol::{FrameError, MethodCodec};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio::task::{Id, JoinSet};
use tokio::time::{timeout, Instant};
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::listen::ListenStats;
use crate::{Peer, ReceiveError, Received};

/// The bounds every served connection obeys.
#[derive(Debug, Clone)]
pub(crate) struct Bounds {
    pub(crate) max_frame_len: usize,
    pub(crate) max_connections: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) evict_after: Duration,
}

/// What the accept loop and every connection task share.
pub(crate) struct Shared {
    pub(crate) bounds: Bounds,
    pub(crate) counters: Counters,
    pub(crate) shutdown: CancellationToken,
    /// Origin of the progress timestamps.
    start: Instant,
}

impl Shared {
    pub(crate) fn new(bounds: Bounds) -> Self {
        Shared {
            bounds,
            counters: Counters::default(),
            shutdown: CancellationToken::new(),
            start: Instant::now(),
        }
    }

    /// Milliseconds since the listener started: a progress timestamp.
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicU64,
    pub(crate) rejected_peers: AtomicU64,
    frames: AtomicU64,
    decode_errors: AtomicU64,
    too_long: AtomicU64,
    idle_timeouts: AtomicU64,
    read_errors: AtomicU64,
    evictions: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ListenStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ListenStats {
            connections: get(&self.connections),
            rejected_peers: get(&self.rejected_peers),
            frames: get(&self.frames),
            decode_errors: get(&self.decode_errors),
            too_long: get(&self.too_long),
            idle_timeouts: get(&self.idle_timeouts),
            read_errors: get(&self.read_errors),
            evictions: get(&self.evictions),
        }
    }
}

/// A stream a listener serves.
pub(crate) trait Connection: AsyncRead + Unpin + Send + 'static {
    /// Whether the kernel holds unread bytes or an end of stream for it:
    /// asked when draining, because the reactor may not have reported them.
    fn has_unread(&self) -> bool;
}

impl Connection for tokio::net::UnixStream {
    fn has_unread(&self) -> bool {
        has_unread(self)
    }
}

/// Whether the kernel holds unread bytes or an end of stream for `socket`.
pub(crate) fn has_unread(socket: &impl std::os::fd::AsFd) -> bool {
    use rustix::net::{recv, RecvFlags};
    let mut byte = [0u8; 1];
    match recv(socket, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        // One byte of data, or zero for an orderly end of stream.
        Ok(_) => true,
        Err(rustix::io::Errno::AGAIN) => false,
        // An error is also something to read: the next read reports it.
        Err(_) => true,
    }
}

/// One served connection, as its task sees it.
#[derive(Clone)]
pub(crate) struct SlotHandle {
    /// When it last completed a frame (or was admitted), per [`Shared::now`].
    progress: Arc<AtomicU64>,
    /// Cancelled when the connection is evicted.
    evicted: CancellationToken,
    /// Admission order, so the first admitted goes first among equals.
    admitted: u64,
}

struct Slot {
    handle: SlotHandle,
    evicted: bool,
}

/// What the accept loop may do about a new connection.
pub(crate) enum Gate {
    /// Accept it.
    Open,
    /// Every slot is taken and nothing may be evicted before this instant.
    Until(Instant),
    /// Too many evicted connections are still winding down: wait for one.
    Closed,
}

/// The connection tasks of one listener and their slots.
#[derive(Default)]
pub(crate) struct Slots {
    tasks: JoinSet<()>,
    slots: HashMap<Id, Slot>,
    /// Slots not evicted.
    live: usize,
    /// Connections admitted so far: the tie-break of equal progress.
    admitted: u64,
}

impl Slots {
    /// Connection tasks still running, evicted ones included.
    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether a new connection may be accepted now (see the module doc).
    pub(crate) fn gate(&self, shared: &Shared) -> Gate {
        let max = shared.bounds.max_connections;
        if self.tasks.len() >= max.saturating_mul(2) {
            return Gate::Closed;
        }
        if self.live < max {
            return Gate::Open;
        }
        let Some(oldest) = self.longest_idle() else {
            return Gate::Open;
        };
        let since = oldest.1.progress.load(Ordering::Relaxed);
        let evictable_at = shared.start + Duration::from_millis(since) + shared.bounds.evict_after;
        if evictable_at <= Instant::now() {
            Gate::Open
        } else {
            Gate::Until(evictable_at)
        }
    }

    /// The live slot that completed a frame longest ago (the first
    /// admitted among equals).
    fn longest_idle(&self) -> Option<(Id, &SlotHandle)> {
        self.slots
            .iter()
            .filter(|(_, slot)| !slot.evicted)
            .map(|(id, slot)| (*id, &slot.handle))
            .min_by_key(|(_, handle)| (handle.progress.load(Ordering::Relaxed), handle.admitted))
    }

    /// Spawns the task serving one new connection, evicting the
    /// longest-idle one first if every slot is taken.
    pub(crate) fn admit<F, Fut>(&mut self, shared: &Arc<Shared>, serve: F)
    where
        F: FnOnce(SlotHandle) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.live >= shared.bounds.max_connections {
            self.evict_longest_idle(shared);
        }
        let now = shared.now();
        self.admitted += 1;
        let handle = SlotHandle {
            progress: Arc::new(AtomicU64::new(now)),
            evicted: CancellationToken::new(),
            admitted: self.admitted,
        };
        let id = self.tasks.spawn(serve(handle.clone())).id();
        self.slots.insert(
            id,
            Slot {
                handle,
                evicted: false,
            },
        );
        self.live += 1;
    }

    fn evict_longest_idle(&mut self, shared: &Shared) {
        let Some((id, _)) = self.longest_idle() else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.evicted = true;
            slot.handle.evicted.cancel();
            self.live -= 1;
            Counters::bump(&shared.counters.evictions);
            tracing::debug!("every connection slot taken: evicted the longest-idle connection");
        }
    }

    /// Waits for a connection task to end and frees its slot; pending
    /// forever when there is none (for use in `select!`).
    pub(crate) async fn reap(&mut self) {
        match self.tasks.join_next_with_id().await {
            Some(Ok((id, ()))) => self.forget(id),
            Some(Err(err)) => self.forget(err.id()),
            None => std::future::pending().await,
        }
    }

    /// Frees the slots of connection tasks already ended, without waiting.
    pub(crate) fn reap_finished(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            let id = match done {
                Ok((id, ())) => id,
                Err(err) => err.id(),
            };
            self.forget(id);
        }
    }

    fn forget(&mut self, id: Id) {
        if let Some(slot) = self.slots.remove(&id) {
            if !slot.evicted {
                self.live -= 1;
            }
        }
    }

    /// Waits up to `deadline` for every connection task to end, then
    /// aborts the rest; returns how many were aborted.
    pub(crate) async fn finish(mut self, deadline: Duration) -> usize {
        let drained = timeout(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_ok() {
            return 0;
        }
        let open = self.tasks.len();
        self.tasks.shutdown().await;
        open
    }
}

/// Most frames a connection hands to the received queue at once (fewer
/// when the queue is shorter): the frames one read brought in, usually
/// (an 8 KiB read buffer holds about 80 `turn_ended` frames).
const MAX_BATCH: usize = 256;

/// What one decode step of a served connection yields.
type Decoded = Result<crate::Method, pod_protocol::DecodeError>;

/// [`MethodCodec`], yielding every frame already complete in the read
/// buffer at once (up to a limit), so that a burst costs one hand-off to
/// the queue per read instead of one per frame. The frames, their order,
/// and where an over-long frame ends the stream are exactly
/// `MethodCodec`'s: an over-long frame after complete ones is held back
/// until those are yielded.
struct BatchCodec {
    codec: MethodCodec,
    limit: usize,
    /// An over-long frame found behind the frames of the last batch.
    too_long: Option<pod_protocol::FrameTooLong>,
}

impl BatchCodec {
    fn new(max_frame_len: usize, limit: usize) -> Self {
        BatchCodec {
            codec: MethodCodec::new(max_frame_len),
            limit: limit.max(1),
            too_long: None,
        }
    }

    /// Adds frames to `batch` with `step` (decode or decode at end of
    /// stream) until none is complete or the batch is full.
    fn fill(
        &mut self,
        buf: &mut BytesMut,
        mut step: impl FnMut(&mut MethodCodec, &mut BytesMut) -> Result<Option<Decoded>, FrameError>,
    ) -> Result<Option<Vec<Decoded>>, FrameError> {
        if let Some(err) = self.too_long.take() {
            return Err(FrameError::TooLong(err));
        }
        let mut batch = Vec::new();
        while batch.len() < self.limit {
            match step(&mut self.codec, buf) {
                Ok(Some(item)) => batch.push(item),
                Ok(None) => break,
                Err(FrameError::TooLong(err)) if !batch.is_empty() => {
                    self.too_long = Some(err);
                    break;
                }
                Err(err) => return Err(err),
            }
        }
        Ok((!batch.is_empty()).then_some(batch))
    }
}

impl Decoder for BatchCodec {
    type Item = Vec<Decoded>;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        self.fill(buf, |codec, buf| codec.decode(buf))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        self.fill(buf, |codec, buf| codec.decode_eof(buf))
    }
}

/// What reading a connection produced next.
enum Next {
    Frames(Option<Result<Vec<Decoded>, FrameError>>),
    Idle,
    /// Shutdown or eviction, and nothing left to yield.
    Done,
}

/// Reads one connection until it ends, goes idle, sends an over-long
/// frame, is evicted, or (after shutdown) has nothing left unread.
///
/// The frames of one read go to the queue together (see [`BatchCodec`]):
/// one wait for room, one progress timestamp and one update of the
/// shared counters per read, not per frame.
pub(crate) async fn serve<C: Connection>(
    stream: C,
    mut peer: Peer,
    shared: Arc<Shared>,
    slot: SlotHandle,
    tx: mpsc::Sender<Received>,
) {
    let counters = &shared.counters;
    let idle = shared.bounds.idle_timeout;
    let codec = BatchCodec::new(
        shared.bounds.max_frame_len,
        MAX_BATCH.min(tx.max_capacity()),
    );
    let mut frames = FramedRead::new(stream, codec);
    let mut draining = false;
    let mut evicted = false;
    let mut batch = Vec::new();
    loop {
        let next = if evicted {
            // Only what is complete already: the slot is someone else's.
            match frames.next().now_or_never() {
                Some(next) => Next::Frames(next),
                None => Next::Done,
            }
        } else if draining {
            drain_next(&mut frames, idle).await
        } else {
            tokio::select! {
                biased;
                next = timeout(idle, frames.next()) => match next {
                    Ok(next) => Next::Frames(next),
                    Err(_) => Next::Idle,
                },
                () = shared.shutdown.cancelled() => {
                    draining = true;
                    continue;
                }
                () = slot.evicted.cancelled() => {
                    evicted = true;
                    continue;
                }
            }
        };
        let items = match next {
            Next::Frames(Some(Ok(items))) => items,
            Next::Frames(Some(Err(FrameError::TooLong(err)))) => {
                peer.record_ancestors();
                Counters::bump(&counters.too_long);
                tracing::warn!(peer = %peer, error = %err, "over-long frame; closing its connection");
                // The connection ends whether or not the item is taken.
                let _ = tx
                    .send(Received {
                        peer: peer.clone(),
                        item: Err(ReceiveError::FrameTooLong(err)),
                    })
                    .await;
                return;
            }
            Next::Frames(Some(Err(err))) => {
                Counters::bump(&counters.read_errors);
                tracing::debug!(peer = %peer, error = %err, "read failed; closing connection");
                return;
            }
            Next::Frames(None) | Next::Done => return,
            Next::Idle => {
                Counters::bump(&counters.idle_timeouts);
                tracing::debug!(peer = %peer, "idle connection closed");
                return;
            }
        };
        // While the sender is surely still connected: once per
        // connection, and only for one that sent something.
        peer.record_ancestors();
        let mut decoded = 0;
        for item in items {
            let item = match item {
                Ok(method) => {
                    decoded += 1;
                    Ok(method)
                }
                Err(err) => {
                    Counters::bump(&counters.decode_errors);
                    tracing::debug!(peer = %peer, error = %err, "undecodable frame");
                    Err(ReceiveError::Decode(err))
                }
            };
            batch.push(Received {
                peer: peer.clone(),
                item,
            });
        }
        if decoded > 0 {
            counters.frames.fetch_add(decoded, Ordering::Relaxed);
            slot.progress.store(shared.now(), Ordering::Relaxed);
        }
        // The batch is at most the queue's capacity, so this waits for
        // room rather than failing; it fails only once the queue is closed.
        let Ok(permits) = tx.reserve_many(batch.len()).await else {
            return;
        };
        for (permit, received) in permits.zip(batch.drain(..)) {
            permit.send(received);
        }
    }
}

/// After shutdown: the next frame if anything is left to read, else
/// [`Next::Done`]. A partial frame is awaited up to `idle`.
async fn drain_next<C: Connection>(frames: &mut FramedRead<C, BatchCodec>, idle: Duration) -> Next {
    if let Some(next) = frames.next().now_or_never() {
        return Next::Frames(next);
    }
    // The reactor may not have reported data the kernel already holds, so
    // ask the kernel: a peek sees unread bytes, or end of stream.
    if frames.read_buffer().is_empty() && !frames.get_ref().has_unread() {
        return Next::Done;
    }
    match timeout(idle, frames.next()).await {
        Ok(next) => Next::Frames(next),
        Err(_) => Next::Idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every item `decoder` yields from `bytes`, fed in `chunks`-sized
    /// reads, then at end of stream; an error ends the stream.
    fn items<D, T>(
        mut decoder: D,
        bytes: &[u8],
        chunk: usize,
        flatten: impl Fn(T) -> Vec<String>,
    ) -> Vec<String>
    where
        D: Decoder<Item = T, Error = FrameError>,
    {
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        let push = |result: Result<Option<T>, FrameError>, out: &mut Vec<String>| match result {
            Ok(Some(item)) => {
                out.extend(flatten(item));
                true
            }
            Ok(None) => false,
            Err(err) => {
                out.push(format!("end: {err}"));
                false
            }
        };
        for piece in bytes.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            while push(decoder.decode(&mut buf), &mut out) {}
            if out.last().is_some_and(|l| l.starts_with("end: ")) {
                return out;
            }
        }
        while push(decoder.decode_eof(&mut buf), &mut out) {}
        out
    }

    fn show(item: Decoded) -> String {
        match item {
            Ok(method) => format!("{method:?}"),
            Err(err) => format!("bad: {err}"),
        }
    }

    proptest! {
        /// The batches hold exactly the frames `MethodCodec` yields, in
        /// order, with an over-long frame ending the stream at the same
        /// place, whatever the reads and the batch limit.
        #[test]
        fn batches_are_the_method_codec_frames(
            lines in prop::collection::vec(0..4u8, 0..24),
            chunk in 1..200usize,
            limit in 1..5usize,
            unterminated in any::<bool>(),
        ) {
            let mut bytes = Vec::new();
            for line in lines {
                bytes.extend_from_slice(match line {
                    0 => &b"{\"method\":\"shutdown\"}\n"[..],
                    1 => b"garbage\n",
                    2 => b"\n",
                    _ => b"{\"method\":\"notify\",\"params\":{\"message\":\"a much longer line than allowed\"}}\n",
                });
            }
            if unterminated {
                bytes.extend_from_slice(b"{\"method\":\"shutdown\"}");
            }
            let max = 40;
            let plain = items(MethodCodec::new(max), &bytes, chunk, |item| vec![show(item)]);
            let batched = items(BatchCodec::new(max, limit), &bytes, chunk, |batch: Vec<Decoded>| {
                assert!(!batch.is_empty() && batch.len() <= limit, "batch of {}", batch.len());
                batch.into_iter().map(show).collect()
            });
            prop_assert_eq!(batched, plain);
        }
    }
}
