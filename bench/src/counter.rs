//! Counting deliveries, and waking the measuring task at the last one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pod_events::{Notification, NotificationSink};
use tokio::sync::Notify;

/// Counts deliveries and wakes the measuring task at the last one.
#[derive(Debug)]
pub(crate) struct Counter {
    count: AtomicUsize,
    target: usize,
    done: Notify,
}

impl Counter {
    pub(crate) fn new(target: usize) -> Arc<Self> {
        Arc::new(Counter {
            count: AtomicUsize::new(0),
            target,
            done: Notify::new(),
        })
    }

    pub(crate) fn add(&self, n: usize) {
        if self.count.fetch_add(n, Ordering::Relaxed) + n == self.target {
            // `notify_one` keeps a permit if nobody waits yet.
            self.done.notify_one();
        }
    }

    pub(crate) fn get(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until the target is reached; an error after 60 s (a hang
    /// guard for lost events, not a performance bound).
    pub(crate) async fn wait(&self) -> Result<()> {
        tokio::time::timeout(Duration::from_secs(60), self.done.notified())
            .await
            .with_context(|| format!("only {} of {} arrived in 60 s", self.get(), self.target))
    }
}

/// A notification sink that only counts.
#[derive(Debug, Clone)]
pub(crate) struct CountingSink(pub(crate) Arc<Counter>);

impl NotificationSink for CountingSink {
    fn deliver(&self, notification: Notification) {
        std::hint::black_box(notification);
        self.0.add(1);
    }
}
