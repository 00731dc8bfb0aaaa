//! Group commit for the scope table: the table operations of events in
//! flight together run in one transaction.
//!
//! With the file store every transaction is a flock, a read and parse of
//! the whole table and, when it changed, one durable write. Run one per
//! event, a burst of 10,000 shutdowns costs 10,000 durable writes of a
//! table of 10,000 allocations. Here an event's operation joins a queue; a
//! driver task takes everything queued, applies it in arrival order inside
//! one [`TableStore::transact`] (or one [`TableStore::read`] when nothing
//! in the batch writes), and only then answers each caller. Operations
//! that arrive while a batch runs form the next one, so batches grow with
//! the load and a lone event still goes through at once.
//!
//! # Why the answers are those of one transaction per event
//!
//! A batch applies its operations to the table in queue order, each
//! on the state the previous ones left, exactly as separate transactions
//! would in that order: a release that fails (unknown pod, incarnation
//! mismatch) changes nothing, as it would alone, and a lookup sees every
//! release queued before it. No other writer can interleave inside a
//! batch because the whole batch holds the store's exclusion. The only
//! difference is durability's granularity: when the batch's write fails,
//! no operation of it took effect, and every caller gets that error
//! ([`BatchError`]); nothing is reported released that is not on disk. The
//! crate's tests check the batches against one transaction per operation
//! for arbitrary operations split into arbitrary batches.
//!
//! # Visits
//!
//! The queue also takes visits: a closure that reads the table at its
//! place in the queue, in the same read or transaction as the operations
//! around it, without a copy of the table. The endpoint checks senders
//! this way, so one read serves every check and lookup of a batch. A
//! visit in a batch that writes sees the table before that write is
//! durable; a visit only reads, and what it decides (who may send what)
//! does not depend on the write.

use std::sync::{Arc, Mutex};

use pod_protocol::PodName;
use pod_scope_lock::{Allocation, Liveness, ScopeError, ScopeTable, Table, TableStore};
use tokio::sync::{oneshot, Semaphore};

/// One scope-table operation of the event path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TableOp {
    /// [`Table::release`]: a departed pod's allocation.
    Release {
        name: PodName,
        incarnation: Option<String>,
    },
    /// [`Table::get`]: the allocation of a pod being registered, to judge
    /// its liveness.
    Find { name: PodName },
}

impl TableOp {
    fn writes(&self) -> bool {
        matches!(self, TableOp::Release { .. })
    }
}

/// What one [`TableOp`] gave, as its own transaction would have.
#[derive(Debug)]
pub(crate) enum TableAnswer {
    Released(Result<Released, ScopeError>),
    Found(Option<Allocation>),
}

/// What a release did: the allocation it removed, and the pods it moved
/// to a new manager (the removed pod's children, as they are after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Released {
    pub(crate) allocation: Allocation,
    pub(crate) moved: Vec<Allocation>,
}

/// [`Table::release`], also saying which pods it moved.
fn release_in(
    table: &mut Table,
    name: &PodName,
    incarnation: Option<&str>,
) -> Result<Released, ScopeError> {
    let (allocation, moved) = table.release_moving(name, incarnation)?;
    Ok(Released { allocation, moved })
}

/// The batch an operation ran in did not complete: none of its operations
/// is known to have taken effect. Shared by every caller of the batch.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum BatchError {
    /// The table could not be read, or the batch's write made durable.
    #[error(transparent)]
    Store(Arc<ScopeError>),
    /// The store panicked while running the batch.
    #[error("the scope-table batch panicked; none of it is known to be saved")]
    Lost,
}

/// Applies one operation to `table`, on the state the operations before
/// it left; a failing release changes nothing.
fn apply_op(table: &mut Table, op: &TableOp) -> TableAnswer {
    match op {
        TableOp::Release { name, incarnation } => {
            TableAnswer::Released(release_in(table, name, incarnation.as_deref()))
        }
        TableOp::Find { name } => lookup(table, name),
    }
}

fn lookup(table: &Table, name: &PodName) -> TableAnswer {
    TableAnswer::Found(table.get(name.as_str()).cloned())
}

type Reply = oneshot::Sender<Result<TableAnswer, BatchError>>;

/// A read of the table at its place in the queue: called once, with the
/// table as the operations queued before it left it, or with `None` when
/// the batch could not read the table. It must not use the store.
pub(crate) type Visitor = Box<dyn FnOnce(Option<&Table>) + Send>;

/// One queued item: an operation and where its answer goes, or a visit.
enum Entry {
    Op(TableOp, Reply),
    /// `None` once called.
    Visit(Option<Visitor>),
}

impl Entry {
    fn writes(&self) -> bool {
        matches!(self, Entry::Op(op, _) if op.writes())
    }

    /// Calls a visit not yet called with `table`; an operation's answer.
    fn apply(&mut self, table: &mut Table) -> Option<TableAnswer> {
        match self {
            Entry::Op(op, _) => Some(apply_op(table, op)),
            Entry::Visit(visitor) => {
                if let Some(visit) = visitor.take() {
                    visit(Some(table));
                }
                None
            }
        }
    }
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Entry>,
    /// A driver task is running and will take `waiting` before it ends.
    driving: bool,
}

/// The queue of table operations of one parent, and its driver.
pub(crate) struct TableBatcher<S: TableStore, L: Liveness> {
    scopes: ScopeTable<S, L>,
    queue: Arc<Mutex<Queue>>,
    /// Held by whoever runs a blocking table operation (a batch here, a
    /// reconcile pass in the parent), one at a time.
    blocking: Arc<Semaphore>,
}

impl<S: TableStore, L: Liveness> std::fmt::Debug for TableBatcher<S, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queued = self.lock().waiting.len();
        f.debug_struct("TableBatcher")
            .field("queued", &queued)
            .finish_non_exhaustive()
    }
}

impl<S: TableStore, L: Liveness> TableBatcher<S, L> {
    pub(crate) fn new(scopes: ScopeTable<S, L>, blocking: Arc<Semaphore>) -> Self {
        TableBatcher {
            scopes,
            queue: Arc::default(),
            blocking,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Releases `name` (if `incarnation` matches) as part of the next
    /// batch. The outer error: the batch did not complete; the inner one:
    /// the release's own answer (unknown pod, incarnation mismatch).
    pub(crate) async fn release(
        &self,
        name: PodName,
        incarnation: Option<String>,
    ) -> Result<Result<Released, ScopeError>, BatchError> {
        match self.run(TableOp::Release { name, incarnation }).await? {
            TableAnswer::Released(answer) => Ok(answer),
            TableAnswer::Found(_) => Err(BatchError::Lost),
        }
    }

    /// The allocation of `name`, read in the next batch (after every
    /// release queued before it).
    pub(crate) async fn find(&self, name: PodName) -> Result<Option<Allocation>, BatchError> {
        match self.run(TableOp::Find { name }).await? {
            TableAnswer::Found(found) => Ok(found),
            TableAnswer::Released(_) => Err(BatchError::Lost),
        }
    }

    /// Queues `op` and waits for its answer. The caller's future may be
    /// dropped at any point: the driver is its own task, so the batch goes
    /// on without it.
    async fn run(&self, op: TableOp) -> Result<TableAnswer, BatchError> {
        if !self.scopes.store().may_block() {
            // In memory a transaction costs a lock and no I/O: batching
            // would only add a task hop.
            return self.run_now(op);
        }
        // The driver answers every operation it takes, even when the batch
        // fails; a dropped reply means the store panicked.
        self.enqueue(op).await.unwrap_or(Err(BatchError::Lost))
    }

    /// Runs `visitor` on the table at this point of the queue: after every
    /// operation queued before it, in the same read as the operations
    /// around it (at once, for stores that never block).
    pub(crate) fn visit(&self, visitor: Visitor) {
        if !self.scopes.store().may_block() {
            let mut visitor = Some(visitor);
            let read = self.scopes.store().read(|table| {
                if let Some(visit) = visitor.take() {
                    visit(Some(table));
                }
            });
            if let (Err(_), Some(visit)) = (read, visitor) {
                visit(None);
            }
            return;
        }
        self.push(Entry::Visit(Some(visitor)));
    }

    /// Queues `op` behind everything queued so far, starting the driver
    /// when none runs. Must be called within a tokio runtime.
    fn enqueue(&self, op: TableOp) -> oneshot::Receiver<Result<TableAnswer, BatchError>> {
        let (reply, answer) = oneshot::channel();
        self.push(Entry::Op(op, reply));
        answer
    }

    /// Queues `entry`, starting the driver when none runs.
    fn push(&self, entry: Entry) {
        let start_driver = {
            let mut queue = self.lock();
            queue.waiting.push(entry);
            !std::mem::replace(&mut queue.driving, true)
        };
        if start_driver {
            tokio::spawn(drive(
                self.scopes.clone(),
                self.queue.clone(),
                self.blocking.clone(),
            ));
        }
    }

    /// One operation as its own transaction (stores that never block).
    fn run_now(&self, op: TableOp) -> Result<TableAnswer, BatchError> {
        match &op {
            TableOp::Release { name, incarnation } => {
                Ok(TableAnswer::Released(self.scopes.store().transact(
                    |table| release_in(table, name, incarnation.as_deref()),
                )))
            }
            TableOp::Find { name } => self
                .scopes
                .find(name)
                .map(TableAnswer::Found)
                .map_err(|error| BatchError::Store(Arc::new(error))),
        }
    }
}

/// Takes every queued operation, runs them as one batch on a blocking
/// thread, answers them, and repeats until the queue is empty.
async fn drive<S: TableStore, L: Liveness>(
    scopes: ScopeTable<S, L>,
    queue: Arc<Mutex<Queue>>,
    blocking: Arc<Semaphore>,
) {
    loop {
        let batch = {
            let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.waiting.is_empty() {
                queue.driving = false;
                return;
            }
            std::mem::take(&mut queue.waiting)
        };
        let mut entries = batch;
        // Never closed, so acquiring only waits.
        let turn = blocking.acquire().await;
        let scopes = scopes.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let outcome = run_batch(&scopes, &mut entries);
            (entries, outcome)
        })
        .await;
        drop(turn);
        // A panic in the store drops the entries: each waiter of an
        // operation reports it, each visit's owner sees its visitor gone,
        // and the next batch starts afresh.
        let Ok((entries, outcome)) = outcome else {
            continue;
        };
        let answers: Vec<Result<Option<TableAnswer>, BatchError>> = match outcome {
            Ok(answers) => answers.into_iter().map(Ok).collect(),
            Err(error) => {
                let error = BatchError::Store(Arc::new(error));
                std::iter::repeat_with(|| Err(error.clone()))
                    .take(entries.len())
                    .collect()
            }
        };
        for (entry, answer) in entries.into_iter().zip(answers) {
            match (entry, answer) {
                (Entry::Op(_, reply), Ok(Some(answer))) => {
                    let _ = reply.send(Ok(answer));
                }
                (Entry::Op(_, reply), Err(error)) => {
                    let _ = reply.send(Err(error));
                }
                // Not called: the batch could not read the table.
                (Entry::Visit(Some(visit)), _) => visit(None),
                (Entry::Op(..), Ok(None)) | (Entry::Visit(None), _) => {}
            }
        }
    }
}

/// One transaction for the whole batch, or one read when nothing in it
/// writes.
/// Answers one per entry (`None` for a visit).
fn run_batch<S: TableStore, L: Liveness>(
    scopes: &ScopeTable<S, L>,
    entries: &mut [Entry],
) -> Result<Vec<Option<TableAnswer>>, ScopeError> {
    let store = scopes.store();
    if entries.iter().any(Entry::writes) {
        store.transact(|table| Ok(entries.iter_mut().map(|e| e.apply(table)).collect()))
    } else {
        // Only lookups and visits: one read (no lock on the write path,
        // no write).
        store.read(|table| {
            entries
                .iter_mut()
                .map(|entry| match entry {
                    Entry::Op(op, _) => match op {
                        TableOp::Find { name } => Some(lookup(table, name)),
                        TableOp::Release { .. } => None,
                    },
                    Entry::Visit(visitor) => {
                        if let Some(visit) = visitor.take() {
                            visit(Some(table));
                        }
                        None
                    }
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use pod_protocol::ScopeRule;
    use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
    use pod_scope_lock::PodSpec;
    use proptest::prelude::*;

    use super::*;

    /// A memory store that claims to block, so the batcher queues and
    /// group-commits on it as it does on the file store.
    #[derive(Debug, Clone, Default)]
    struct Blocking(MemoryStore);

    impl TableStore for Blocking {
        fn transact<R>(
            &self,
            f: impl FnOnce(&mut Table) -> Result<R, ScopeError>,
        ) -> Result<R, ScopeError> {
            self.0.transact(f)
        }

        fn read<R>(&self, f: impl FnOnce(&Table) -> R) -> Result<R, ScopeError> {
            self.0.read(f)
        }
    }

    const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "ghost"];

    fn name(i: usize) -> PodName {
        PodName::new(NAMES[i]).expect("a valid name")
    }

    /// a -> b -> c, a -> d, and e on its own; "ghost" is never allocated.
    fn base() -> (Table, FakeLiveness) {
        let liveness = FakeLiveness::new();
        let scopes = ScopeTable::new(MemoryStore::new(), liveness.clone());
        let spec = |i: usize, target: &str| {
            let pid = 100 + i as u32;
            liveness.spawn(pid);
            PodSpec {
                pod_name: name(i),
                pid,
                socket: format!("/run/{}", NAMES[i]),
                scope: vec![ScopeRule::write(target)],
            }
        };
        scopes.register(spec(0, "/srv/a")).expect("a");
        scopes.delegate(&name(0), spec(1, "/srv/a/b")).expect("b");
        scopes.delegate(&name(1), spec(2, "/srv/a/b/c")).expect("c");
        scopes.delegate(&name(0), spec(3, "/srv/a/d")).expect("d");
        scopes.register(spec(4, "/srv/e")).expect("e");
        (scopes.store().load().expect("the table"), liveness)
    }

    /// An operation drawn from names, with no, the right or a wrong
    /// incarnation.
    fn op(table: &Table) -> impl Strategy<Value = TableOp> {
        let incarnations: Vec<Option<String>> = NAMES
            .iter()
            .map(|n| table.get(n).and_then(|a| a.incarnation.clone()))
            .collect();
        (0..NAMES.len(), 0..3u8, any::<bool>()).prop_map(move |(i, inc, find)| {
            if find {
                return TableOp::Find { name: name(i) };
            }
            let incarnation = match inc {
                0 => None,
                1 => incarnations[i].clone().or_else(|| Some("0".repeat(32))),
                _ => Some("f".repeat(32)),
            };
            TableOp::Release {
                name: name(i),
                incarnation,
            }
        })
    }

    /// What an answer says, comparable across runs.
    fn summary(answer: &Result<TableAnswer, BatchError>) -> String {
        match answer {
            Ok(TableAnswer::Released(Ok(a))) => format!("released {a:?}"),
            Ok(TableAnswer::Released(Err(e))) => format!("refused {e}"),
            Ok(TableAnswer::Found(found)) => format!("found {found:?}"),
            Err(e) => format!("batch failed {e}"),
        }
    }

    /// Each operation as its own transaction, in order.
    fn one_by_one(table: &Table, liveness: &FakeLiveness, ops: &[TableOp]) -> (Vec<String>, Table) {
        let scopes = ScopeTable::new(MemoryStore::with_table(table.clone()), liveness.clone());
        let answers = ops
            .iter()
            .map(|op| {
                let answer = match op {
                    TableOp::Release { name, incarnation } => TableAnswer::Released(
                        scopes
                            .store()
                            .transact(|table| release_in(table, name, incarnation.as_deref())),
                    ),
                    TableOp::Find { name } => TableAnswer::Found(scopes.find(name).expect("read")),
                };
                summary(&Ok(answer))
            })
            .collect();
        (answers, scopes.store().load().expect("the table"))
    }

    /// The operations through the batcher, queued in order; at each index
    /// in `splits` the test waits for everything queued so far, so the
    /// batches are cut there.
    fn batched(
        table: &Table,
        liveness: &FakeLiveness,
        ops: &[TableOp],
        splits: &[usize],
        fail_writes: usize,
    ) -> (Vec<String>, Table, u64) {
        let store = Blocking(MemoryStore::with_table(table.clone()));
        store.0.fail_next_writes(fail_writes);
        let scopes = ScopeTable::new(store.clone(), liveness.clone());
        let batcher = TableBatcher::new(scopes, Arc::new(Semaphore::new(1)));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let answers = runtime.block_on(async {
            let mut answers = Vec::new();
            let mut pending = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                if splits.contains(&i) {
                    for answer in pending.drain(..) {
                        answers.push(summary(&answer_of(answer).await));
                    }
                }
                pending.push(batcher.enqueue(op.clone()));
            }
            for answer in pending {
                answers.push(summary(&answer_of(answer).await));
            }
            answers
        });
        (answers, store.load().expect("the table"), store.0.writes())
    }

    async fn answer_of(
        answer: oneshot::Receiver<Result<TableAnswer, BatchError>>,
    ) -> Result<TableAnswer, BatchError> {
        answer.await.unwrap_or(Err(BatchError::Lost))
    }

    proptest! {
        /// Group commit gives every operation the answer it would get as
        /// its own transaction in arrival order, and the same final table,
        /// however the operations fall into batches.
        #[test]
        fn batches_answer_as_one_transaction_per_operation(
            (ops, splits) in {
                let (table, _) = base();
                (proptest::collection::vec(op(&table), 0..24),
                 proptest::collection::vec(0..24usize, 0..4))
            }
        ) {
            let (table, liveness) = base();
            let (expected, expected_table) = one_by_one(&table, &liveness, &ops);
            let (answers, final_table, writes) = batched(&table, &liveness, &ops, &splits, 0);
            prop_assert_eq!(answers, expected);
            prop_assert_eq!(final_table, expected_table);
            // One write per batch at most: never one per release.
            prop_assert!(writes as usize <= splits.len() + 1);
        }
    }

    #[test]
    fn a_failed_batch_write_fails_every_operation_in_it_and_the_next_batch_retries() {
        let (table, liveness) = base();
        let ops = [
            TableOp::Release {
                name: name(4),
                incarnation: None,
            },
            TableOp::Find { name: name(4) },
            TableOp::Release {
                name: name(2),
                incarnation: None,
            },
            // The second batch: the same releases again.
            TableOp::Release {
                name: name(4),
                incarnation: None,
            },
            TableOp::Release {
                name: name(2),
                incarnation: None,
            },
        ];
        let (answers, final_table, _) = batched(&table, &liveness, &ops, &[3], 1);
        for answer in &answers[..3] {
            assert!(answer.starts_with("batch failed"), "{answer}");
        }
        assert!(answers[3].starts_with("released"), "{}", answers[3]);
        assert!(answers[4].starts_with("released"), "{}", answers[4]);
        let (_, expected) = one_by_one(&table, &liveness, &ops[3..]);
        assert_eq!(final_table, expected);
        assert!(final_table.get("e").is_none() && final_table.get("c").is_none());
    }

    #[test]
    fn a_lookup_sees_the_releases_queued_before_it() {
        let (table, liveness) = base();
        let ops = [
            TableOp::Find { name: name(1) },
            TableOp::Release {
                name: name(1),
                incarnation: None,
            },
            TableOp::Find { name: name(1) },
            TableOp::Find { name: name(2) },
        ];
        let (answers, _, writes) = batched(&table, &liveness, &ops, &[], 0);
        assert!(answers[0].starts_with("found Some"), "{}", answers[0]);
        assert_eq!(answers[2], "found None");
        // c was reparented to a when b was released.
        assert!(
            answers[3].contains("delegated_from: Some(PodName(\"a\"))"),
            "{}",
            answers[3]
        );
        assert_eq!(writes, 1);
    }
}
