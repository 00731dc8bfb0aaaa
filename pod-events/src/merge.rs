//! One [`MethodSource`] from two: an endpoint served by a Unix socket and
//! a TLS listener at once (`podctl listen --socket ... --listen tls://...`).
//!
//! Each source is drained by a task of its own into one bounded channel,
//! rather than polled with `select!` in `recv`: [`MethodSource::recv`]
//! does not promise to be cancel safe, and a `select!` would drop the
//! losing source's future, and with it perhaps an item. The bound keeps
//! back-pressure: a task waits while the endpoint is busy, and its
//! source's own queue fills as it would without the merge.

use pod_transport::{MethodSource, Received};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Items taken from the sources ahead of the endpoint: the sources queue
/// the rest themselves.
const MERGE_QUEUE: usize = 64;

/// The items of two [`MethodSource`]s as one source, in the order they
/// arrive; it ends once both have ended (each after its own shutdown).
/// Built by [`merge`]. Nests: a `Merged` is a source too.
///
/// Dropping it stops the tasks that drain the sources and drops the
/// sources, unread items included.
#[derive(Debug)]
pub struct Merged {
    rx: mpsc::Receiver<Received>,
    tasks: [JoinHandle<()>; 2],
}

/// Merges `a` and `b` into one source. Must be called inside a tokio
/// runtime: it spawns one task per source.
pub fn merge<A: MethodSource, B: MethodSource>(a: A, b: B) -> Merged {
    let (tx, rx) = mpsc::channel(MERGE_QUEUE);
    Merged {
        tasks: [forward(a, tx.clone()), forward(b, tx)],
        rx,
    }
}

fn forward<S: MethodSource>(mut source: S, tx: mpsc::Sender<Received>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(item) = source.recv().await {
            if tx.send(item).await.is_err() {
                return;
            }
        }
    })
}

impl MethodSource for Merged {
    async fn recv(&mut self) -> Option<Received> {
        self.rx.recv().await
    }
}

impl Drop for Merged {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pod_protocol::Method;
    use pod_transport::testing::MemoryNetwork;
    use pod_transport::MethodSender;

    #[tokio::test]
    async fn yields_every_item_of_both_and_ends_when_both_end() {
        let net = MemoryNetwork::new();
        let (a, b) = (net.bind("/a"), net.bind("/b"));
        let sender = net.sender();
        let mut merged = merge(a, b);
        for i in 0..10 {
            let to = if i % 2 == 0 { "/a" } else { "/b" };
            sender
                .send(to.as_ref(), &Method::notify(i.to_string()))
                .await
                .unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..10 {
            got.push(merged.recv().await.unwrap().item.unwrap());
        }
        let mut want: Vec<_> = (0..10).map(|i| Method::notify(i.to_string())).collect();
        let key = |m: &Method| format!("{m:?}");
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got, want);
        net.unbind("/a".as_ref());
        net.unbind("/b".as_ref());
        assert!(merged.recv().await.is_none());
    }
}
